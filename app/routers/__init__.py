"""One router per resource: runs, images and artifacts, programs, modules, health."""
