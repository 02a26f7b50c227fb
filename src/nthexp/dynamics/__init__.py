"""nthexp.dynamics"""
