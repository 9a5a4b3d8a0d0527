"""Many runs: the plan of a multi-run call and its data types (launch/plan.py), running a point (launch/run.py),
the executors behind one interface (sequential here, ``--jobs N`` local processes in launch/local.py, SLURM via
submitit in launch/slurm.py), the console board, and the call that picks an executor and ends with a
comparison (launch/call.py)."""
