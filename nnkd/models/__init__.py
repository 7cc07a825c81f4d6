"""Student network code that training and deployment both need (no trainer imports here)."""
