import sys, torch
print(sys.executable, sys.path, torch.__file__, torch.__version__)
