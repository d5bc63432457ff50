"""The machinery of the text heads: the shared base, the pure formulas, fine-tuning.

The public estimators stay in :mod:`skclip.tip_adapter`, :mod:`skclip.gda` and
:mod:`skclip.ape`: a class's module path is written into every saved model.
"""
