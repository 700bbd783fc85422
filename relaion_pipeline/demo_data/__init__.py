"""The synthetic demo data: shards, lists and sidecars (`demo`), image bytes (`demo_images`) and URLs
(`demo_urls`). Never real content.
"""
