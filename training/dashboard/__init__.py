"""The admin dashboard: where each project stands, launching and watching runs, checkpoints, votes, annotators."""
