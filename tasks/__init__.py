"""One module per stage of the recipe: its SPEC (inputs by role, params sections) and run(st)."""
