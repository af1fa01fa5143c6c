"""``python -m training OBJECTIVE [flags]``: ``retrieval train`` without the retrieval command around it."""
from training.cli import main

raise SystemExit(main())
