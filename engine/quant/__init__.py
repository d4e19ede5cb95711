"""Weight formats for the decode pass: int8 weight-only quantization and the matmul that reads it."""
