"""Pure ML code: no Django imports. Functions take plain data and paths, return plain data."""
