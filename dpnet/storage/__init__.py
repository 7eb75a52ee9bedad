"""Files: atomic writes, and the checkpoint format (.npz of plain arrays + JSON
metadata, never unpickled)."""
