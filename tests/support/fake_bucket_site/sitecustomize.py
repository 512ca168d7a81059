"""Put on a subprocess's PYTHONPATH (with FAKE_BUCKET_ROOT set) to serve gs:// from a local directory."""
import os
import sys

if os.environ.get("FAKE_BUCKET_ROOT"):
    sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
    import fake_bucket

    fake_bucket.register()
