"""Worklists: what each reader, technician and administrator may see, and (later) reading state."""
