"""ECG: one internal model, readers for the formats carts export, analysis and rendering."""
