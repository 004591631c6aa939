"""Imported before torch by the CLI and the bench scripts: OpenMP workers wait passively.

libgomp's workers busy-wait between parallel regions by default. On a CPU shared with other
processes (more runnable threads than cores) the spinning threads steal the cores the working
threads need: on this project's 2-core machine under load, the Langevin sampler with 2 threads
ran about 10× slower in wall time and used 10× the CPU time of the passive policy (see
bench/README.md). The passive policy costs little on an idle machine. A value the user set in
the environment wins. It only takes effect if torch has not been imported yet.
"""

import os

#: True when ebmctl chose the policy (the user had not set one); ``ebmctl bench`` then also
#: times the naive loop in a child process under OpenMP's default policy.
SET_BY_EBMCTL = not os.environ.get("OMP_WAIT_POLICY")
if SET_BY_EBMCTL:
    os.environ["OMP_WAIT_POLICY"] = "PASSIVE"
