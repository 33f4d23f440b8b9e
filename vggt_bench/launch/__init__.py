"""Running a sweep's jobs: what the submitit launchers (local, Slurm) need (``launchers``), and the
sweep's progress across whichever process runs a job (``progress``). Used by ``commands.sweep``.
"""
