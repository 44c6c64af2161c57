"""The admin dashboard served by every MDS: the page, its JSON API (``/api/v1``) and
Prometheus ``/metrics`` (aiohttp). See vstore/admin/app.py."""
