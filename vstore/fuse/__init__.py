"""The FUSE mount: pyfuse3 on asyncio, translating kernel requests to vstore.client calls."""
