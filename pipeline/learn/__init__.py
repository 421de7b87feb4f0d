"""Learn: a tile index in, trained checkpoints and validation metrics out.

:mod:`~pipeline.learn.dataset` reads tiles (and LEVIR-CD / open-cd folders), :mod:`~pipeline.learn.augment`
and :mod:`~pipeline.learn.normalization` shape the batches, :mod:`~pipeline.learn.sampling` draws each epoch's
samples (class-balanced crops), :mod:`~pipeline.learn.pseudo_labels` labels a scene from a label-free map,
:mod:`~pipeline.learn.train` runs the loop, :mod:`~pipeline.learn.comparison` sets its scores beside label-free ones,
:mod:`~pipeline.learn.checkpoint` saves and loads, :mod:`~pipeline.learn.metrics` and
:mod:`~pipeline.learn.semantic_metrics` score, :mod:`~pipeline.learn.prompts` builds SegChange-R1's text
embeddings, and :mod:`~pipeline.learn.xbd` converts xBD pairs into a semantic-change tile folder.
"""
