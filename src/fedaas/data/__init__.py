"""Datasets: reading members' data, checking it against the job, partitioning."""
