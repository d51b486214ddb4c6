"""What a user writes instead of gigabatch: one script per peer and job kind, each run as
`python SCRIPT JOBS OUT LIMIT` with the GIGACHAT_* variables set, as the peer benchmark does."""
