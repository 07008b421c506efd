"""Knowing mistakes: the pitfall table (``pitfalls``) and its NumPy twins forward
(``variants``) and backward (``variants_backward``), naming the mistake a failing result
matches (``diagnose``), the zoo of correct float32 algorithms that must conform (``zoo``)
and the detection matrix of both on a golden set (``coverage``)."""
