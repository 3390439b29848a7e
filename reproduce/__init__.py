"""`latentcheck reproduce`: a study (the paper's, or your own) declared as data, run on your checkpoints, its tables
printed beside the published numbers (study.py: the format; run.py: running it; tables.py / report.py: the output)."""
