"""One module per CLI subcommand; `nasbench.cli` registers them."""
