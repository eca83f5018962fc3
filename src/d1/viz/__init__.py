"""Viewers of generations: the HTML trace replay (`d1 trace`), the terminal chat display, report figures."""
