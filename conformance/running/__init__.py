"""Running an implementation: loading its target (``targets``), calling it on one case's
inputs in the user's layout (``invoke``, ``adapters``), isolating it in a worker process
(``worker``) and running a program through the program protocol (``program``,
``program_files``)."""
