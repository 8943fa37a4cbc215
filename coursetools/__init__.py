"""Course tooling for tinytorch: student release, grading and checks.

Hand-written (not generated from nbs/): it works on the notebooks, it is not part of the library that
students build. It imports nbgrader lazily, so `nbdev-export` can load its export processor cheaply.
"""
