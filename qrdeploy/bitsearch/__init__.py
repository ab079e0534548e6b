"""`qrdeploy harden --search`: per-layer bit widths under a size and a clean-accuracy budget,
confirmed by the adaptive worst case (search.py), and its report (render.py)."""
