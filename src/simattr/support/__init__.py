"""Counterfactual evaluation: the data removal and data mislabel support of sampled test images.

    search   the searches, without files: the bisection (released) and adaptive engines over a Bank of models
             that a callable trains (L3)
    bank     the real models of one answer: ModelBank (trained, journaled, resumable), their seeds (L3)
    answer   one answer: its Settings (checked once), identity (hash), inputs, and compute (L3)
    stage    the support stage: one array task per test image through simattr.launch, resume, gather (L4)

Nothing is imported here: import a name from the module that owns it (importing simattr.support.search loads
neither the stage nor submitit).
"""
