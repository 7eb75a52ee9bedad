"""The command-line front ends behind scripts/: ``mnist`` (runDnn.py, runDnnDebug.py),
``lstm`` (runLstm.py), and what they share (``common``)."""
