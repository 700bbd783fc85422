"""The stages of one shard: removals, research and research-safe (`pipeline`), and how variants are written
(`variants`).
"""
