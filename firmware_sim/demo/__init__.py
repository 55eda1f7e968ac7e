"""`sealgw demo`: a scripted district day across broker, master, simulator and gateway processes."""
