"""DiscoRM rewards in other libraries' training loops (``trl``: GRPO / RLOO reward functions)."""
