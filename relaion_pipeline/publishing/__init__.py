"""Releases: publishing (`release`), the manifest (`manifest`), verifying (`verification`), cleaning an old
copy (`clean`), the dataset card and reports (`report`, `plots`) and LAION row hashes (`row_hashes`).
"""
