"""Help texts of the run-folder options every training command shares (see train/run_folder.py)."""

RESUME_HELP = "Continue the run in --out from its newest checkpoint (same config; an error when there is none)."
OVERWRITE_HELP = (
    "Replace the run in --out: deletes only what a run of this command wrote there "
    "(refused when the folder holds anything else)."
)
