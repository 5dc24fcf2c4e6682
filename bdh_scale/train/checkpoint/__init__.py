"""Checkpoints: written so that a crash never leaves one that looks valid, read without running
code from them, and chosen on resume.

    checkpointer.py   save / load / verify / prune, the manifest, compatibility with a recipe
    files.py          the files of a checkpoint (safetensors, weights_only torch files, FSDP shards)
    resume.py         which checkpoint a run continues and which directory it writes
"""
