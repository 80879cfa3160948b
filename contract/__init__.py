"""The ground floor both sides of the dependency wall stand on: the bundle format, its manifest
check, file hashing and atomic writes, and the student's input layout.

Standard library and numpy only: it ships with the app, and training and export import it too,
so the two sides cannot drift apart.
"""
