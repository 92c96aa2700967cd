"""registry-gate: promotes a model version to a stage only with a signed, authorised request,
passing artifact and dataset verdicts, and enough distinct approvers who are not the author.

Pure domain modules: `policy` (who holds which role, what each stage needs) and `gate` (the
recorded evidence and the decision over it).
"""
