"""Profile pack: ``<vendor>/<model>.yaml`` files, found through the ``fieldgate.profiles`` entry point."""
