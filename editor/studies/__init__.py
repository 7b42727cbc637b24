"""Studies built on editing: sweeps, R by editing, sequential (lifelong) runs, data sets, figures."""
