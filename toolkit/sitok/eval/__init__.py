"""sitok.eval"""
