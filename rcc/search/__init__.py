"""Search per-layer sparsity and rank with Optuna; results land in the session as ``apply_trial`` nodes.

    space.py     which numbers a trial picks and the plan they make (layer / group / global levels)
    objective.py what a trial measures: size and accuracy of a compressed copy of the model
    pruning.py   growing eval subsets (rungs) and the rules that cut hopeless trials
    storage.py   where studies live: SESSION/search.db or any Optuna RDB URL
    study.py     settings, limits, progress, where a study starts from, one worker's loop
    run.py       ``run_search`` creates or joins a study and runs it (here, or in worker processes)
    worker.py    worker processes joining one study (python -m rcc.search.worker)
    trials.py    reading a study back: ``list_trials``, ``study_info``, the front, one trial's record
"""
