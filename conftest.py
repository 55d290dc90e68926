"""Run every test, and every notebook kernel nbval starts, with one CPU thread.

The numbers nbval compares were saved by ``scripts/execute_chapters.py`` with one
thread: float sums split over a different number of threads round differently,
and after a thousand SGD steps that can move a printed accuracy. One thread
makes the checked numbers the same on every machine, whatever its core count.
Kernels are child processes and inherit these variables.
"""
import os

os.environ["OMP_NUM_THREADS"] = "1"
os.environ["MKL_NUM_THREADS"] = "1"
