"""Protocol's I/O shell: the key files it defines and the ``keys`` / ``inspect`` commands.

:mod:`protocol` itself does no I/O; this subpackage is where its formats meet the file
system and the command line.
"""
