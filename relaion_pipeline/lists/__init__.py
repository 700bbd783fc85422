"""Partner lists: the list kinds (`kinds`), parsing and merging the lists into one versioned blocklist
(`blocklists`), and incremental list updates (`incremental`).
"""
