"""Whole federations on one machine: coordinator and members as OS processes."""
