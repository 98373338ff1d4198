"""Every benchmark of the project, behind the ``clbench`` command."""
