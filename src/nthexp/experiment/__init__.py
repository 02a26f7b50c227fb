"""nthexp.experiment"""
