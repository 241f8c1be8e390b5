"""One server's life: its launch command, its process tree and guardian, its supervision (start, probe, wedge,
restart, stop), the fault-injecting mock, the tiny model, and `doctor`."""
