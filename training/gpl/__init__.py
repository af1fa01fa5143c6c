"""GPL, Generative Pseudo Labeling (Wang et al., NAACL 2022): unsupervised domain adaptation of a bi-encoder.

One module per job: :mod:`.generate` (query generators), :mod:`.filter` (drop empty, duplicate and copied
queries, counted), :mod:`.extract` (queries cut out of their documents, no model), :mod:`.mine` (hard negatives),
:mod:`.label` (cross-encoder margins), :mod:`.cache` (stage folders, resumable chunks), :mod:`.pipeline` (the stages
in order) and :mod:`.margin_mse` (the loss and the objective module :mod:`training.registry` names). Nothing heavy
is imported here.
"""
