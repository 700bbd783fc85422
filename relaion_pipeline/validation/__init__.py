"""The blocking checks (`checks`), their Great Expectations layer (`quality`), the independent leak search of
the research check (`leaks`) and the input check's counts (`input_counts`).
"""
