"""Ray glue: a local head on loopback, the Jobs API client, and Ray Train/actor runners.

Ray is imported inside functions so `import nasbench` and `nasbench --help` stay fast.
"""
